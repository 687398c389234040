-- The LoRA paper's Table 6 at SmolLM2-135M's scale: how little the rank matters, for Wq,
-- Wq+Wv and all four attention projections at r = 1, 2, 4, 8, 64, on two tasks
-- (recipes/lib/lora_paper.lua), two seeds a cell. The saved adapters feed the subspace
-- similarity of the paper's Figures 3 and 4 (`runner similarity`). Long: stop it with
-- --time-limit and run it again to go on.
--   runner recipes/lora_table6.lua [--set steps=N] [--time-limit 2h]
--   runner table results/lora_table6 --rows targets,rank --cols task --value score --agg mean_std
-- Results: results/lora_table6/.

local trial = require "lib.lora_paper"
local steps = runner.params.steps or 60
local base = runner.model.load("smollm2-135m-instruct")

runner.sweep{
  name = "lora_table6",
  grid = {
    task = { "nli", "instruct" },
    targets = { "q", "qv", "qkvo" },
    rank = { 1, 2, 4, 8, 64 },
    seed = { 1, 2 },
  },
  trial = function(p)
    return trial(base, { task = p.task, targets = p.targets, rank = p.rank, seed = p.seed, steps = steps })
  end,
}
