-- A reward model on SmolLM2-135M-Instruct, initialised from the SFT model as InstructGPT and
-- TRL's examples do: an SFT adapter (sweep reward_sft, run once) is merged into the base, then
-- a one-label score head (transformers' LlamaForSequenceClassification layout) and a LoRA
-- adapter train on the 1,500 preference pairs of data/prefs/tasks_train.jsonl (right answer
-- over a plausible wrong one), scored on the 100 held-out pairs of
-- data/prefs/tasks_heldout.jsonl, whose prompts and answers it never saw.
--   runner recipes/reward_model.lua [--set steps=N] [--set rank=R] [--set sft_steps=N]
--     [--set train=PAIRS.jsonl[,PAIRS.jsonl...] --set heldout=PAIRS.jsonl] (other pairs: the
--     word-count pairs alone, data/prefs/count_words_train.jsonl and count_words_heldout.jsonl;
--     or the task pairs with the extra counts, sums and reversals, tasks_train.jsonl,
--     count_words_train.jsonl, add_train.jsonl, reverse_train.jsonl, joined in that order)
-- Results: results/reward_model/ (trials.csv, steps.csv, the adapter with its head).

local steps = runner.params.steps or 200
local sft = require "lib.sft"
local base = runner.model.load("smollm2-135m-instruct")
local sft_adapter = sft(base, { name = "reward_sft", steps = runner.params.sft_steps or 60 })
local train_files = {}
for path in (runner.params.train or "data/prefs/tasks_train.jsonl"):gmatch("[^,]+") do
  train_files[#train_files + 1] = path
end
local train = runner.data.pairs(train_files)
local heldout = runner.data.pairs(runner.params.heldout or "data/prefs/tasks_heldout.jsonl")

runner.sweep{
  name = "reward_model",
  grid = { rank = { runner.params.rank or 8 } },
  trial = function(p)
    local model = base:clone()
    model:load_adapter(sft_adapter, "sft")
    model:merge_and_unload()
    model:add_score_head{ seed = p.seed }
    model:attach(runner.peft.lora{ rank = p.rank, alpha = 2 * p.rank, targets = "all-linear" })
    local rt = runner.reward_trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-3 },
      schedule = "cosine", warmup = 10, total_steps = steps,
      max_grad_norm = 1.0,
      center_rewards_coefficient = 0.01,
      seed = p.seed,
    }
    local acc_before, before = rt:evaluate(heldout, { size = 16 })
    for step, batch in train:batches{ size = 8, steps = steps, seed = p.seed } do
      local loss, info = rt:step(batch)
      if step % 5 == 0 or step == 1 then
        runner.log{ step = step, loss = loss, accuracy = info.accuracy, margin = info.margin, lr = info.lr }
      end
    end
    local acc, after = rt:evaluate(heldout, { size = 16 })
    model:save_adapter(runner.trial_dir() .. "/adapter")
    return {
      heldout_pairs = after.pairs,
      accuracy_before = acc_before, accuracy = acc,
      margin_before = before.margin, margin = after.margin,
      mean_reward = after.mean_reward,
      trainable = model:trainable_params(),
    }
  end,
}
