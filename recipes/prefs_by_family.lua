-- The held-out task pairs of data/prefs/ scored family by family (the family of each line is in
-- data/prefs/tasks_heldout.families): which kinds of pairs can SmolLM2-135M-Instruct tell
-- apart at all? Two scorers:
--   likelihood  the SFT model of the preference recipes prefers the answer with the higher
--               log-probability given the prompt, summed over the answer's tokens and EOS:
--               what the language model itself knows. (lib/sft.lua runs here as its own sweep,
--               prefs_by_family_sft, since a sweep's trial ids hash the recipe that runs it;
--               same training and seed, so the same weights as reward_sft and dpo_sft.)
--   reward DIR  a reward adapter (--set reward_adapter=results/reward_model/<trial>/adapter)
--               from recipes/reward_model.lua: the reward model's ranking, with the same SFT
--               merged into the base as that recipe trains it.
--   dpo DIR     a DPO policy (--set dpo_adapter=results/dpo/<trial>/policy) from
--               recipes/dpo.lua: TRL's rewards/accuracies pair by pair, the policy's log-ratio
--               to the SFT reference higher for chosen than for rejected.
--   runner recipes/prefs_by_family.lua [--set reward_adapter=DIR[,DIR...]] [--set dpo_adapter=DIR[,DIR...]]
-- Results: results/prefs_by_family/trials.csv, one row per scorer, one column per family
-- (the share of its pairs ranked right), `all`, and `wrong` (the lines ranked wrongly).

local sft = require "lib.sft"
local base = runner.model.load("smollm2-135m-instruct")
local sft_adapter = sft(base, { name = "prefs_by_family_sft", steps = 60 })
local heldout = runner.data.jsonl("data/prefs/tasks_heldout.jsonl")
local families = {}
for name in runner.data.text("data/prefs/tasks_heldout.families"):gmatch("[^\n]+") do
  families[#families + 1] = name
end
assert(#families == #heldout, string.format("%d families for %d pairs", #families, #heldout))

-- log p(answer, EOS | prompt) under `model`.
local function answer_logprob(model, prompt, answer)
  local prompt_ids = model:encode(prompt)
  local ids = model:encode(prompt .. answer)
  for i, id in ipairs(prompt_ids) do
    assert(ids[i] == id, "the prompt's tokens are not a prefix of prompt .. answer: " .. prompt)
  end
  ids[#ids + 1] = model:special_tokens().eos
  local lp = model:logprobs(ids)
  local sum = 0
  for i = #prompt_ids, #lp do sum = sum + lp[i] end  -- lp[i] is log p(ids[i + 1] | ids[1..i])
  return sum
end

-- For each pair, whether the scorer puts chosen above rejected.
local function ranked_right(scorer)
  local kind, dir = scorer:match("^(%a+) (.+)$")
  local model = base:clone()
  model:load_adapter(sft_adapter, "sft")
  local right = {}
  if scorer == "likelihood" then
    for i = 1, #heldout do
      local r = heldout:example(i)
      right[i] = answer_logprob(model, r.prompt, r.chosen) > answer_logprob(model, r.prompt, r.rejected)
    end
  elseif kind == "dpo" then
    model:load_adapter(dir, "policy")
    -- log pi(answer) - log pi_ref(answer), the reference being the SFT adapter.
    local function log_ratio(prompt, answer)
      model:set_adapter("policy")
      local policy = answer_logprob(model, prompt, answer)
      model:set_adapter("sft")
      return policy - answer_logprob(model, prompt, answer)
    end
    for i = 1, #heldout do
      local r = heldout:example(i)
      right[i] = log_ratio(r.prompt, r.chosen) > log_ratio(r.prompt, r.rejected)
    end
  else
    assert(kind == "reward", "unknown scorer " .. scorer)
    model:merge_and_unload()
    model:add_score_head{}
    model:load_adapter(dir, "reward")
    local items = {}
    for i = 1, #heldout do
      local r = heldout:example(i)
      items[#items + 1] = { prompt = r.prompt, completion = r.chosen }
      items[#items + 1] = { prompt = r.prompt, completion = r.rejected }
    end
    local scores = model:reward(items)
    for i = 1, #heldout do right[i] = scores[2 * i - 1] > scores[2 * i] end
  end
  return right
end

local scorers = { "likelihood" }
for _, kind in ipairs{ "reward", "dpo" } do
  for dir in (runner.params[kind .. "_adapter"] or ""):gmatch("[^,]+") do
    scorers[#scorers + 1] = kind .. " " .. dir
  end
end

runner.sweep{
  name = "prefs_by_family",
  grid = { scorer = scorers },
  trial = function(p)
    local right = ranked_right(p.scorer)
    local hits, counts, total, wrong = {}, {}, 0, {}
    for i, family in ipairs(families) do
      counts[family] = (counts[family] or 0) + 1
      hits[family] = (hits[family] or 0) + (right[i] and 1 or 0)
      total = total + (right[i] and 1 or 0)
      if not right[i] then wrong[#wrong + 1] = i end
    end
    -- `wrong`: the lines of tasks_heldout.jsonl ranked wrongly, to compare scorers pair by pair.
    local row = { all = total / #heldout, wrong = table.concat(wrong, " ") }
    for family, n in pairs(counts) do row[family] = hits[family] / n end
    return row
  end,
}
