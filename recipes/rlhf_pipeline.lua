-- The three stages of RLHF end to end on SmolLM2-135M-Instruct, each in its own sweep folder:
--   1. rlhf_sft     a LoRA adapter instruction-tuned on data/instruct.jsonl;
--   2. rlhf_reward  a reward model (score head + LoRA) on the preference pairs of
--                   data/prefs/tasks_train.jsonl (right answer over a plausible wrong one);
--   3. rlhf_ppo     PPO against that reward model. One model holds everything: the SFT adapter
--                   twice (the frozen reference "sft" and the trained "policy"), the reward
--                   adapter ("reward", frozen) and the value adapter ("value", initialised from
--                   the reward model as TRL does), all over one frozen base.
-- Scored on the 100 held-out prompts of data/prefs/tasks_heldout.jsonl: the reward model's mean
-- score of the policy's greedy answers before and after PPO, and their exact match.
--   runner recipes/rlhf_pipeline.lua [--set sft_steps=N] [--set rm_steps=N] [--set ppo_steps=N]

local sft = require "lib.sft"
local sft_steps = runner.params.sft_steps or 60
local rm_steps = runner.params.rm_steps or 100
local ppo_steps = runner.params.ppo_steps or 40
local base = runner.model.load("smollm2-135m-instruct")
local heldout = runner.data.jsonl("data/prefs/tasks_heldout.jsonl")
  :map(function(r) return { prompt = r.prompt, response = r.chosen } end)
local train_prompts = runner.data.jsonl("data/prefs/tasks_train.jsonl")
local gen = { max_new_tokens = 24, stop = { "\n" } }

local sft_adapter = sft(base, { name = "rlhf_sft", steps = sft_steps, eval = heldout, gen = gen })

local rm = runner.sweep{
  name = "rlhf_reward",
  trial = function(p)
    local model = base:clone()
    model:add_score_head{ seed = p.seed }
    model:attach(runner.peft.lora{ rank = 8, alpha = 16, targets = "all-linear" })
    local rt = runner.reward_trainer{
      model = model, optim = runner.optim.adamw{ lr = 1e-3 },
      schedule = "cosine", warmup = math.min(10, rm_steps - 1), total_steps = rm_steps, max_grad_norm = 1.0,
      center_rewards_coefficient = 0.01, seed = p.seed,
    }
    local pairs = runner.data.pairs("data/prefs/tasks_train.jsonl")
    for step, batch in pairs:batches{ size = 8, steps = rm_steps, seed = p.seed } do
      local loss, info = rt:step(batch)
      if step % 10 == 0 or step == 1 then runner.log{ step = step, loss = loss, accuracy = info.accuracy } end
    end
    local acc = rt:evaluate(runner.data.pairs("data/prefs/tasks_heldout.jsonl"), { size = 16 })
    local dir = runner.trial_dir() .. "/adapter"
    model:save_adapter(dir)
    return { adapter = dir, heldout_accuracy = acc }
  end,
}

-- The reward model's mean score of the active policy's greedy answers to the held-out prompts.
local function heldout_reward(model)
  local preds = runner.eval.generation(model, heldout, gen)
  local items = {}
  for i, pr in ipairs(preds.predictions) do
    items[i] = { prompt = pr.prompt, completion = pr.prediction ~= "" and pr.prediction or " " }
  end
  model:set_adapter("reward")
  local scores = model:reward(items)
  model:set_adapter("policy")
  local sum = 0
  for _, s in ipairs(scores) do sum = sum + s end
  return sum / #scores, preds.exact_match
end

runner.sweep{
  name = "rlhf_ppo",
  grid = { kl_coef = { 0.05 } },
  trial = function(p)
    local model = base:clone()
    model:add_score_head{ seed = p.seed }
    model:load_adapter(rm[1].adapter, "reward")
    model:load_adapter(rm[1].adapter, "value")
    model:load_adapter(sft_adapter, "sft")
    model:load_adapter(sft_adapter, "policy")
    local reward_before, em_before = heldout_reward(model)
    local ppo = runner.ppo{
      model = model, value_adapter = "value", reward_adapter = "reward", ref_adapter = "sft",
      optim = runner.optim.adamw{ lr = runner.params.lr or 1e-4 },
      kl_coef = p.kl_coef, response_length = 24, temperature = 0.7, stop = { "\n" },
      missing_eos_penalty = 1.0, seed = p.seed,
    }
    local per_step = 8
    local n = #train_prompts
    local max_kl = 0
    for step = 1, ppo_steps do
      local batch = {}
      for i = 1, per_step do
        batch[i] = train_prompts:example(((step - 1) * per_step + i - 1) % n + 1).prompt
      end
      local loss, info = ppo:step(batch)
      max_kl = math.max(max_kl, info["objective/kl"])
      runner.log{ step = step, loss = loss, ["objective/scores"] = info["objective/scores"],
                  ["objective/kl"] = info["objective/kl"], ["objective/rlhf_reward"] = info["objective/rlhf_reward"],
                  ["policy/clipfrac_avg"] = info["policy/clipfrac_avg"], ["loss/value_avg"] = info["loss/value_avg"],
                  ["completions/mean_length"] = info["completions/mean_length"],
                  ["time/generation"] = info["time/generation"], ["time/training"] = info["time/training"] }
    end
    local reward_after, em_after = heldout_reward(model)
    model:save_adapter(runner.trial_dir() .. "/policy", "policy")
    return { reward_before = reward_before, reward_after = reward_after, max_kl = max_kl,
             exact_match_before = em_before, exact_match = em_after }
  end,
}
