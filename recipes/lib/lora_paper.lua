-- One trial of the LoRA paper's experiment designs (Hu et al., 2021, Tables 5 and 6) at
-- SmolLM2-135M's scale: LoRA on a set of attention projections at a rank, trained on one of
-- two tasks, scored as the paper scores its two:
--   task "instruct" (WikiSQL's role: generation scored by exact match): data/instruct.jsonl in
--     the Alpaca format; the greedy answers to the 100 held-out prompts of
--     data/prefs/tasks_heldout.jsonl, exact match against the right answer.
--   task "nli" (MultiNLI's role: accuracy of the label token): data/nli/train.jsonl; the 300
--     held-out pairs of data/nli/heldout.jsonl, whose subjects, activities and places are new.
-- α is fixed across ranks (the paper sets α to the first r it tries and does not tune it).
-- Training: 60 steps of 8 rows, AdamW 1e-3, cosine after 3 warm-up steps, f32. At 30 steps
-- the NLI task was still at chance (0.35–0.40 against 0.34 zero-shot); at 60 it is not (0.51
-- for q,v r = 4).
-- Each trial saves its adapter, for `runner similarity` between ranks and seeds.
--   local trial = require "lib.lora_paper"
--   trial(base, { task = "nli", targets = "qv", rank = 4, seed = 1, steps = 60 })

local names = { q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj" }
local labels = { " yes", " maybe", " no" }

local cache = {}
local function data(task)
  if cache[task] then return cache[task] end
  local d = {}
  if task == "nli" then
    d.train = runner.data.jsonl("data/nli/train.jsonl")
    local heldout = runner.data.jsonl("data/nli/heldout.jsonl")
    local index = { [" yes"] = 1, [" maybe"] = 2, [" no"] = 3 }
    d.prompts, d.answers = {}, {}
    for i = 1, heldout:len() do
      local row = heldout:example(i)
      d.prompts[i], d.answers[i] = row.prompt, index[row.response]
    end
  elseif task == "instruct" then
    d.train = runner.data.jsonl("data/instruct.jsonl"):template("alpaca")
    d.heldout = runner.data.jsonl("data/prefs/tasks_heldout.jsonl")
      :map(function(r) return { prompt = r.prompt, response = r.chosen } end)
  else
    error("task must be \"nli\" or \"instruct\" (got " .. tostring(task) .. ")")
  end
  cache[task] = d
  return d
end

return function(base, o)
  local d = data(o.task)
  local targets = {}
  for c in o.targets:gmatch(".") do targets[#targets + 1] = assert(names[c], "targets: letters of qkvo") end
  local model = base:clone()
  model:attach(runner.peft.lora{ rank = o.rank, alpha = o.alpha or 8, targets = targets, seed = o.seed })
  local trainer = runner.trainer{
    model = model, optim = runner.optim.adamw{ lr = o.lr or 1e-3 },
    schedule = "cosine", warmup = o.warmup or 3, total_steps = o.steps, seed = o.seed,
    precision = o.precision or "fp32",
  }
  for step, batch in d.train:batches{ size = 8, max_len = 256, steps = o.steps, seed = o.seed } do
    local loss = trainer:step(batch)
    if step % 10 == 0 or step == 1 then runner.log{ step = step, loss = loss } end
  end
  model:save_adapter(runner.trial_dir() .. "/adapter")
  local score
  if o.task == "nli" then
    local right = 0
    for i, pick in ipairs(model:classify(d.prompts, labels)) do
      if pick == d.answers[i] then right = right + 1 end
    end
    score = right / #d.prompts
  else
    score = runner.eval.generation(model, d.heldout, { max_new_tokens = 16, stop = { "\n" } }).exact_match
  end
  return { score = score, trainable = model:trainable_params() }
end
