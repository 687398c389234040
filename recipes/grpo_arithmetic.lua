-- GRPO on SmolLM2-135M-Instruct with rewards written in Lua: exact match of the answer on
-- arithmetic tasks (sums, the larger of two numbers, sorting; data/arithmetic/train.jsonl), plus
-- small credits for keeping the format (numbers only) and for an answer that holds the right
-- number somewhere: the model starts by answering in sentences ("The sum of 19 and 21 is 40."),
-- so exact answers are rare at first. A LoRA adapter trains on groups of 8 sampled completions per prompt; the
-- reference is the model with the adapter disabled. Greedy exact match on the 60 held-out
-- prompts of data/arithmetic/heldout.jsonl (prompts it never saw), before and after.
--   runner recipes/grpo_arithmetic.lua [--set steps=N] [--set lr=X] [--set beta=B] [--set loss_type=T]
-- Results: results/grpo_arithmetic/ (trials.csv, steps.csv with reward, reward_std, kl,
-- completion lengths and the time split, predictions.jsonl per trial).

local steps = runner.params.steps or 40
local prompts_per_step = runner.params.prompts or 4
local base = runner.model.load("smollm2-135m-instruct")
local train = runner.data.jsonl("data/arithmetic/train.jsonl")
local heldout = runner.data.jsonl("data/arithmetic/heldout.jsonl")
  :map(function(r) return { prompt = r.prompt, response = r.answer } end)
local gen = { max_new_tokens = 24, stop = { "\n" } }

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

-- 1 when the answer is exactly the expected one.
local function exact(_, completion, row)
  return trim(completion) == row.answer and 1 or 0
end

-- 1 when the expected answer appears in the completion at all (as a whole number or list).
local function contains(_, completion, row)
  local escaped = row.answer:gsub("%p", "%%%0")
  return completion:find("%f[%d]" .. escaped .. "%f[%D]") and 1 or 0
end

-- 1 when the completion is numbers only (digits, commas, spaces): the answer's format.
local function numbers_only(_, completion)
  local t = trim(completion)
  return (#t > 0 and not t:find("[^%d, ]")) and 1 or 0
end

runner.sweep{
  name = "grpo_arithmetic",
  grid = { loss_type = { runner.params.loss_type or "dapo" }, beta = { runner.params.beta or 0.0 } },
  trial = function(p)
    local model = base:clone()
    model:attach(runner.peft.lora{ rank = 16, alpha = 32, targets = "all-linear" })
    local before = runner.eval.generation(model, heldout, gen).exact_match
    local grpo = runner.grpo{
      model = model, optim = runner.optim.adamw{ lr = runner.params.lr or 3e-4 },
      reward_funcs = { exact, numbers_only, contains }, reward_weights = { 1.0, 0.2, 0.2 },
      num_generations = 8, max_completion_length = 24, temperature = 1.0, stop = { "\n" },
      loss_type = p.loss_type, beta = p.beta, seed = p.seed,
    }
    local n = #train
    for step = 1, steps do
      local batch = {}
      for i = 1, prompts_per_step do
        batch[i] = train:example(((step - 1) * prompts_per_step + i - 1) % n + 1)
      end
      local loss, info = grpo:step(batch)
      runner.log{ step = step, loss = loss, reward = info.reward, reward_std = info.reward_std,
                  exact = info["rewards/0/mean"], numbers_only = info["rewards/1/mean"],
                  contains = info["rewards/2/mean"], kl = info.kl,
                  ["completions/mean_length"] = info["completions/mean_length"],
                  ["clip_ratio/region_mean"] = info["clip_ratio/region_mean"],
                  ["time/generation"] = info["time/generation"], ["time/training"] = info["time/training"] }
    end
    gen.save = runner.trial_dir() .. "/predictions.jsonl"
    local after = runner.eval.generation(model, heldout, gen).exact_match
    gen.save = nil
    return { exact_match_before = before, exact_match = after, steps = steps }
  end,
}
