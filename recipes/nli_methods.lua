-- Classification as next-token prediction on an NLI-style task (data/nli/, made by
-- scripts/make_nli_data.py: premise and hypothesis -> " yes", " maybe" or " no"): WARP's
-- learned prompts and verbalizer beside prompt tuning, LoRA, AttentionFusion and Ladder
-- Side-Tuning, with the same step budget. Scored by the accuracy of the label token on the
-- 300 held-out pairs, whose subjects, activities and places never occur in training.
--   runner recipes/nli_methods.lua [--set steps=N] [--set model=M]
-- (The label words must each be one token of the model's vocabulary: a byte-level tiny model
-- will not do.)
-- Results: results/nli_methods/trials.csv and steps.csv.

local steps = runner.params.steps or 60
local base = runner.model.load(runner.params.model or "smollm2-135m-instruct")
local train = runner.data.jsonl("data/nli/train.jsonl")
local heldout = runner.data.jsonl("data/nli/heldout.jsonl")
local labels = { " yes", " maybe", " no" }
local index = { [" yes"] = 1, [" maybe"] = 2, [" no"] = 3 }
local prompts, answers = {}, {}
for i = 1, heldout:len() do
  local row = heldout:example(i)
  prompts[i], answers[i] = row.prompt, index[row.response]
end

local function accuracy(model)
  local picks = model:classify(prompts, labels)
  local right = 0
  for i, p in ipairs(picks) do
    if p == answers[i] then right = right + 1 end
  end
  return right / #picks
end

local methods = {
  warp          = { lr = 3e-2, spec = function() return runner.peft.warp{ labels = labels, num_virtual_tokens = 8 } end },
  prompt_tuning = { lr = 3e-2, spec = function() return runner.peft.prompt_tuning{ num_virtual_tokens = 8 } end },
  lora          = { lr = 1e-3, spec = function() return runner.peft.lora{ rank = 8, alpha = 16 } end },
  attention_fusion = { lr = 1e-2, spec = function() return runner.peft.attention_fusion{} end },
  ladder        = { lr = 3e-3, spec = function() return runner.peft.ladder{ reduction_factor = 8 } end },
}
local names = {}
for name in pairs(methods) do names[#names + 1] = name end
table.sort(names)

runner.sweep{
  name = "nli_methods",
  grid = { method = names },
  trial = function(p)
    local m = methods[p.method]
    local model = base:clone()
    local before = accuracy(model)
    model:attach(m.spec())
    local trainer = runner.trainer{
      model = model, optim = runner.optim.adamw{ lr = m.lr },
      schedule = "cosine", warmup = 5, total_steps = steps,
    }
    for step, batch in train:batches{ size = 8, max_len = 96, steps = steps, seed = p.seed } do
      local loss = trainer:step(batch)
      if step % 5 == 0 or step == 1 then runner.log{ step = step, loss = loss } end
    end
    return {
      accuracy_zero_shot = before,
      accuracy = accuracy(model),
      trainable = model:trainable_params(),
      lr = m.lr,
    }
  end,
}
