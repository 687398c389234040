-- LoRA against QLoRA on SmolLM2-135M: the same adapters (q_proj + v_proj) trained on the same
-- instruction data, once over the f32 base and once over an NF4 base (block 64, double
-- quantization, applied projection by projection while loading, so the f32 model never
-- exists whole). Each trial loads its own model, so its peak memory is its own.
--   runner recipes/qlora_sweep.lua [--set steps=N] [--set model=PATH]
-- Results: results/qlora_sweep/trials.csv (eval loss before/after, weight bytes, the measured
-- peak memory) and steps.csv.

local steps = runner.params.steps or 30
local size, max_len = 4, 128
local data = runner.data.jsonl("data/quickstart.jsonl"):split{ eval = 0.1, seed = 0 }

runner.sweep{
  name = "qlora_sweep",
  grid = { method = { "lora", "qlora" }, rank = { 8 } },
  trial = function(p)
    local quantize = p.method == "qlora" and { dtype = "nf4", block = 64, double = true } or nil
    local model = runner.model.load(runner.params.model or "smollm2-135m-instruct", { quantize = quantize })
    model:attach(runner.peft.lora{ rank = p.rank, alpha = 2 * p.rank, targets = { "q_proj", "v_proj" } })
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-3 },
      schedule = "cosine", warmup = 3, total_steps = steps,
    }
    local before = trainer:evaluate(data.eval, { size = size, max_len = max_len })
    for step, batch in data.train:batches{ size = size, max_len = max_len, steps = steps, seed = p.seed } do
      runner.log{ step = step, loss = trainer:step(batch) }
    end
    local after = trainer:evaluate(data.eval, { size = size, max_len = max_len })
    return {
      trainable = model:trainable_params(),
      eval_loss_before = before,
      eval_loss = after,
      weights_mb = runner.mem{ model = model, batch = 1, seq = 1 }.weights_mb,
    }
  end,
}
