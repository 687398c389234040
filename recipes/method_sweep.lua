-- Every fine-tuning method on the same instruction data with the same step budget: one grid
-- over methods, one trials.csv (method, rank, trainable params, eval loss, seconds, peak memory).
-- Intrinsic prompt tuning first needs prompts of other tasks, trained by a small sweep of
-- its own (results/method_sweep_prompt_sources).
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

-- Intrinsic prompt tuning needs a subspace of prompts from other tasks: prompt tuning on six
-- task families of data/instruct.jsonl (a one-off sweep that later runs reuse), then an
-- auto-encoder over the six prompts.
local families = {
  plural = "plural", opposite = "opposite", larger = "bigger", sort = "Sort",
  reverse = "Reverse", count = "How many words",
}
local family_names = {}
for name in pairs(families) do family_names[#family_names + 1] = name end
table.sort(family_names)
local prompt_text = "Answer the question briefly."
local sources = runner.sweep{
  name = "method_sweep_prompt_sources",
  grid = { family = family_names },
  trial = function(p)
    local model = base:clone()
    model:attach(runner.peft.prompt_tuning{ num_virtual_tokens = 20, text = prompt_text })
    local rows = runner.data.jsonl("data/instruct.jsonl")
      :filter(function(r) return r.instruction:find(families[p.family], 1, true) end)
      :template("alpaca")
    local trainer = runner.trainer{
      model = model, optim = runner.optim.adamw{ lr = 3e-2 },
      schedule = "cosine", warmup = 3, total_steps = steps,
    }
    local loss
    for _, batch in rows:batches{ size = 8, max_len = 384, steps = steps, seed = p.seed } do
      loss = trainer:step(batch)
    end
    local dir = runner.trial_dir() .. "/adapter"
    model:save_adapter(dir)
    return { adapter = dir, rows = rows:len(), loss = loss }
  end,
}
local subspace = runner.results_dir() .. "/method_sweep_prompt_sources/subspace"
local source_dirs = {}
for _, r in ipairs(sources) do source_dirs[#source_dirs + 1] = r.adapter end
local fit = runner.peft.fit_intrinsic_subspace{
  prompts = source_dirs, out = subspace, dim = 5, hidden = 256, steps = 2000, lr = 1e-3,
}
print(string.format("intrinsic subspace: %d prompts, reconstruction MSE %.3g", #source_dirs, fit.loss))

-- Compacter's bottleneck (d / reduction factor) must split into its 4 rule blocks: 24 on
-- SmolLM2 (576 / 24 = 24), 8 on the tiny model.
local compacter_rf = (base:config().hidden_size // 24) % 4 == 0 and 24 or 8

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
  krona         = { lr = 1e-3, spec = function() return runner.peft.krona{} end },
  krona_bres    = { lr = 1e-3, spec = function() return runner.peft.krona{ placement = "ffn" } end },
  compacter     = { lr = 3e-3, spec = function() return runner.peft.compacter{ reduction_factor = compacter_rf } end },
  compacter_pp  = { lr = 3e-3, spec = function() return runner.peft.compacter_pp{ reduction_factor = compacter_rf } end },
  adamix        = { lr = 1e-3, spec = function() return runner.peft.adamix{ reduction_factor = 16 } end },
  -- WARP is meant for classification (see recipes/nli_methods.lua); on this data its
  -- verbalizer learns output embeddings for the ten digits the sums are written with.
  warp          = { lr = 3e-2, spec = function()
    return runner.peft.warp{ num_virtual_tokens = 20, text = prompt_text,
      labels = { "0", "1", "2", "3", "4", "5", "6", "7", "8", "9" } } end },
  intrinsic_prompt = { lr = 5e-2, spec = function() return runner.peft.intrinsic_prompt{ subspace = subspace } end },
  ladder        = { lr = 3e-3, spec = function() return runner.peft.ladder{ reduction_factor = 8 } end },
  attention_fusion = { lr = 1e-2, spec = function() return runner.peft.attention_fusion{} end },
  -- LeTS selects its 4 layers after the first third of the steps, then tunes only them.
  lets          = { lr = 1e-4, spec = function() return runner.peft.lets{ budget = math.min(4, base:config().num_hidden_layers), penalty = 0.01 } end },
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
    local lets_layers = ""
    for step, batch in data.train:batches{ size = 8, max_len = 64, steps = steps, seed = p.seed } do
      runner.log{ step = step, loss = trainer:step(batch) }
      if p.method == "lets" and step == steps // 3 then
        lets_layers = table.concat(model:lets_select(), " ")
      end
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
      lets_layers = lets_layers,
    }
  end,
}
