-- Quickstart: a tiny random Llama learns short question/answer pairs through LoRA.
-- Runs in well under a minute on a laptop CPU:
--   runner recipes/quickstart.lua
-- Results: results/quickstart/trials.csv and results/quickstart/steps.csv.

local steps = runner.params.steps or 150
local data = runner.data.jsonl("data/quickstart.jsonl"):split{ eval = 0.1, seed = 0 }

runner.sweep{
  name = "quickstart",
  grid = { rank = { 8 } },
  trial = function(p)
    local model = runner.model.tiny{ layers = 2, d_model = 64, heads = 4, kv_heads = 2, vocab = 256, seed = p.seed }
    model:attach(runner.peft.lora{ rank = p.rank, alpha = 2 * p.rank, targets = "all-linear" })
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-2 },
      schedule = "cosine", warmup = 10, total_steps = steps,
    }
    local before = trainer:evaluate(data.eval)
    for step, batch in data.train:batches{ size = 16, max_len = 64, steps = steps, seed = p.seed } do
      local loss = trainer:step(batch)
      if step % 10 == 0 or step == 1 then runner.log{ step = step, loss = loss } end
    end
    local after = trainer:evaluate(data.eval)
    return {
      eval_loss_before = before,
      eval_loss = after,
      trainable = model:trainable_params(),
      total = model:total_params(),
    }
  end,
}
