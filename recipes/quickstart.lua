-- Quickstart: a tiny random Llama learns short question/answer pairs through LoRA.
-- Runs in well under a minute on a laptop CPU:
--   runner recipes/quickstart.lua [--set rank=R] [--set steps=N]
-- Results: results/quickstart/trials.csv and results/quickstart/steps.csv.

local fit = require "lib.fit"
local steps = runner.params.steps or 150
local rank = runner.params.rank or 8
local data = runner.data.jsonl("data/quickstart.jsonl"):split{ eval = 0.1, seed = 0 }

-- A sweep without a grid is a single run.
runner.sweep{
  name = "quickstart",
  trial = function(p)
    local model = runner.model.tiny{ layers = 2, d_model = 64, heads = 4, kv_heads = 2, vocab = 256, seed = p.seed }
    model:attach(runner.peft.lora{ rank = rank, alpha = 2 * rank, targets = "all-linear" })
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-2 },
      schedule = "cosine", warmup = 10, total_steps = steps,
    }
    local metrics = fit(trainer, data, { steps = steps, size = 16, max_len = 64, seed = p.seed, log_every = 10 })
    metrics.rank = rank
    metrics.trainable = model:trainable_params()
    metrics.total = model:total_params()
    return metrics
  end,
}
