-- The LoRA paper's Table 5 at SmolLM2-135M's scale: which attention projections to adapt
-- under one parameter budget. As in the paper, r = 8 for one projection type, r = 4 for two,
-- r = 2 for all four; SmolLM2's k and v are narrower than q and o (192 against 576 outputs),
-- so `trainable` says what each set costs here. Two tasks (recipes/lib/lora_paper.lua), three
-- seeds a cell. Long: stop it with --time-limit and run it again to go on.
--   runner recipes/lora_table5.lua [--set steps=N] [--time-limit 2h]
--   runner table results/lora_table5 --rows targets --cols task --value score --agg mean_std
-- Results: results/lora_table5/.

local trial = require "lib.lora_paper"
local steps = runner.params.steps or 60
local base = runner.model.load("smollm2-135m-instruct")
local rank = { q = 8, k = 8, v = 8, o = 8, qk = 4, qv = 4, qkvo = 2 }

runner.sweep{
  name = "lora_table5",
  grid = {
    task = { "nli", "instruct" },
    targets = { "q", "k", "v", "o", "qk", "qv", "qkvo" },
    seed = { 1, 2 },
  },
  trial = function(p)
    local r = trial(base, { task = p.task, targets = p.targets, rank = rank[p.targets], seed = p.seed, steps = steps })
    r.rank = rank[p.targets]
    return r
  end,
}
