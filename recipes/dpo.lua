-- DPO on SmolLM2-135M-Instruct, starting from an SFT adapter: first a LoRA adapter is
-- instruction-tuned on data/instruct.jsonl (the sweep dpo_sft, run once); then each trial loads
-- it twice, as the policy that trains and as the frozen reference (TRL's ref_adapter_name),
-- and runs DPO on the 1,500 pairs of data/prefs/tasks_train.jsonl. Scored on the 100 held-out pairs of
-- data/prefs/tasks_heldout.jsonl (prompts it never saw): TRL's rewards/accuracies and margins,
-- and exact match of greedy answers against the chosen ones, before and after DPO.
--   runner recipes/dpo.lua [--set steps=N] [--set sft_steps=N] [--set losses=L --set beta=B]
--     [--set rpo_alpha=A] [--set train=PAIRS.jsonl[,PAIRS.jsonl...]] (e.g. the task pairs with
--     the extra counts, sums and reversals of data/prefs/, as recipes/reward_model.lua says)
-- The sweep runs loss type x beta; results/dpo/trials.csv holds one row per pair.

local sft = require "lib.sft"
local sft_steps = runner.params.sft_steps or 60
local steps = runner.params.steps or 120
local limit = runner.params.limit or 50
-- Weight of the chosen answers' NLL beside the DPO loss (RPO; TRL's loss = {"sigmoid", "sft"}):
-- without it the chosen answers' probability falls with the rejected ones' and greedy answers
-- degenerate; 0 turns it off.
local rpo_alpha = runner.params.rpo_alpha or 0.5
local base = runner.model.load("smollm2-135m-instruct")
local train_files = {}
for path in (runner.params.train or "data/prefs/tasks_train.jsonl"):gmatch("[^,]+") do
  train_files[#train_files + 1] = path
end
local train = runner.data.pairs(train_files)
local heldout = runner.data.pairs("data/prefs/tasks_heldout.jsonl")
-- The held-out prompts with the chosen answers as references, for exact match.
local heldout_answers = runner.data.jsonl("data/prefs/tasks_heldout.jsonl")
  :map(function(r) return { prompt = r.prompt, response = r.chosen } end)
local gen = { max_new_tokens = 16, limit = limit, stop = { "\n" } }

local sft_adapter, em_sft = sft(base, { name = "dpo_sft", steps = sft_steps, eval = heldout_answers, gen = gen })

runner.sweep{
  name = "dpo",
  grid = { loss = runner.params.losses and { runner.params.losses } or { "sigmoid", "robust" },
           beta = runner.params.beta and { runner.params.beta } or { 0.1, 0.5 } },
  trial = function(p)
    local model = base:clone()
    model:load_adapter(sft_adapter, "reference")
    model:load_adapter(sft_adapter, "policy")
    local dpo = runner.dpo{
      model = model, ref_adapter = "reference",
      loss = p.loss, beta = p.beta, label_smoothing = p.loss == "robust" and 0.1 or nil,
      rpo_alpha = rpo_alpha,
      optim = runner.optim.adamw{ lr = 5e-4 },
      schedule = "cosine", warmup = 5, total_steps = steps, max_grad_norm = 1.0,
      precompute_ref_log_probs = true, seed = p.seed,
    }
    local _, before = dpo:evaluate(heldout, { size = 16 })
    for step, batch in train:batches{ size = 8, steps = steps, seed = p.seed } do
      local loss, info = dpo:step(batch)
      if step % 5 == 0 or step == 1 then
        runner.log{ step = step, loss = loss, ["rewards/accuracies"] = info["rewards/accuracies"],
                    ["rewards/margins"] = info["rewards/margins"], ["logps/chosen"] = info["logps/chosen"],
                    ["logps/rejected"] = info["logps/rejected"], nll_loss = info.nll_loss }
      end
    end
    local _, after = dpo:evaluate(heldout, { size = 16 })
    -- The policy, for scoring by family (recipes/prefs_by_family.lua --set dpo_adapter=...).
    model:save_adapter(runner.trial_dir() .. "/policy", "policy")
    gen.save = runner.trial_dir() .. "/predictions.jsonl"
    local em = runner.eval.generation(model, heldout_answers, gen).exact_match
    return {
      accuracies_before = before["rewards/accuracies"], accuracies = after["rewards/accuracies"],
      margins = after["rewards/margins"], heldout_loss = after.loss,
      exact_match_sft = em_sft, exact_match = em,
    }
  end,
}
