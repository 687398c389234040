-- Every fine-tuning method on the same instruction data with the same step budget: one grid
-- over methods, one trials.csv (method, rank, trainable params, eval loss, seconds, peak memory).
--   runner recipes/method_sweep.lua [--set steps=N] [--set rank=R] [--set model=tiny]
-- Results: results/method_sweep/trials.csv and steps.csv; each trial's adapter is saved in
-- results/method_sweep/<trial-id>/adapter (Hugging Face PEFT format where PEFT has one).

local steps = runner.params.steps or 30
local rank = runner.params.rank or 8
local base
if runner.params.model == "tiny" then
  base = runner.model.tiny{ layers = 2, d_model = 64, heads = 4, kv_heads = 2, vocab = 256, seed = 0 }
else
  base = runner.model.load(runner.params.model or "smollm2-135m-instruct")
end
local data = runner.data.jsonl("data/quickstart.jsonl"):split{ eval = 0.1, seed = 0 }

-- Each method with the learning rate it is usually trained at (soft prompts need far larger
-- steps than weights; full fine-tuning far smaller).
local methods = {
  full          = { lr = 5e-5, spec = function() return runner.peft.full{} end },
  lora          = { lr = 1e-3, spec = function() return runner.peft.lora{ rank = rank, alpha = 2 * rank } end },
  lora_all      = { lr = 1e-3, spec = function() return runner.peft.lora{ rank = rank, alpha = 2 * rank, targets = "all-linear" } end },
  rslora_all    = { lr = 1e-3, spec = function() return runner.peft.lora{ rank = rank, alpha = 2 * rank, targets = "all-linear", rslora = true } end },
  pissa_all     = { lr = 1e-3, spec = function() return runner.peft.lora{ rank = rank, alpha = rank, targets = "all-linear", init = "pissa" } end },
  lokr_all      = { lr = 1e-3, spec = function() return runner.peft.lokr{ rank = rank, alpha = 2 * rank, targets = "all-linear" } end },
  dora          = { lr = 1e-3, spec = function() return runner.peft.dora{ rank = rank, alpha = 2 * rank } end },
  ia3           = { lr = 3e-3, spec = function() return runner.peft.ia3{} end },
  houlsby       = { lr = 1e-3, spec = function() return runner.peft.houlsby{ reduction_factor = 16 } end },
  pfeiffer      = { lr = 1e-3, spec = function() return runner.peft.pfeiffer{ reduction_factor = 16 } end },
  prompt_tuning = { lr = 3e-2, spec = function() return runner.peft.prompt_tuning{ num_virtual_tokens = 20, text = "Answer the question briefly." } end },
  prefix_tuning = { lr = 1e-2, spec = function() return runner.peft.prefix_tuning{ num_virtual_tokens = 20 } end },
  bitfit        = { lr = 1e-3, spec = function() return runner.peft.bitfit{} end },
  ln_tuning     = { lr = 1e-3, spec = function() return runner.peft.ln_tuning{} end },
}
local names = {}
for name in pairs(methods) do names[#names + 1] = name end
table.sort(names)

runner.sweep{
  name = "method_sweep",
  grid = { method = names },
  trial = function(p)
    local m = methods[p.method]
    local model = base:clone()
    model:attach(m.spec())
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = m.lr },
      schedule = "cosine", warmup = 3, total_steps = steps,
    }
    local before = trainer:evaluate(data.eval, { size = 8, max_len = 64 })
    for step, batch in data.train:batches{ size = 8, max_len = 64, steps = steps, seed = p.seed } do
      runner.log{ step = step, loss = trainer:step(batch) }
    end
    local after = trainer:evaluate(data.eval, { size = 8, max_len = 64 })
    if p.method ~= "full" then model:save_adapter(runner.trial_dir() .. "/adapter") end
    local lora_family = p.method:find("lora") or p.method:find("lokr") or p.method == "dora" or p.method == "pissa_all"
    return {
      rank = lora_family and rank or "",
      lr = m.lr,
      trainable = model:trainable_params(),
      trainable_pct = 100 * model:trainable_params() / model:total_params(),
      eval_loss_before = before,
      eval_loss = after,
    }
  end,
}
