-- Single-task fine-tuning: SmolLM2-135M-Instruct learns to write one-sentence summaries of
-- the short news reports in data/summarize.jsonl (700 rows), through LoRA, with the model's
-- own chat template. Reports eval loss and ROUGE-L of greedy summaries on held-out rows,
-- before and after training.
--   runner recipes/single_task_summarize.lua [--set steps=N] [--set rank=R]
-- Results: results/single_task_summarize/ (trials.csv, steps.csv, predictions before/after).

local steps = runner.params.steps or 80
local limit = runner.params.limit or 30
local base = runner.model.load("smollm2-135m-instruct")
local data = runner.data.jsonl("data/summarize.jsonl")
  :map(function(row)
    return { messages = {
      { role = "user", content = "Summarize this report in one sentence.\n\n" .. row.document },
      { role = "assistant", content = row.summary },
    } }
  end)
  :template("chat", { model = base })
  :split{ eval = 100, seed = 0 }

runner.sweep{
  name = "single_task_summarize",
  grid = { rank = { runner.params.rank or 8 } },
  trial = function(p)
    local model = base:clone()
    model:attach(runner.peft.lora{ rank = p.rank, alpha = 2 * p.rank, targets = "all-linear" })
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-3 },
      schedule = "cosine", warmup = math.min(10, steps - 1), total_steps = steps,
      max_grad_norm = 1.0,
    }
    local dir = runner.trial_dir()
    local gen = { max_new_tokens = 40, limit = limit }
    local _, before = trainer:evaluate(data.eval, { size = 8, max_len = 320 })
    gen.save = dir .. "/predictions_before.jsonl"
    local rouge_before = runner.eval.generation(model, data.eval, gen)
    for step, batch in data.train:batches{ size = 4, max_len = 320, steps = steps, seed = p.seed } do
      local loss, info = trainer:step(batch)
      if step % 5 == 0 or step == 1 then
        runner.log{ step = step, loss = loss, lr = info.lr, grad_norm = info.grad_norm }
      end
    end
    local _, after = trainer:evaluate(data.eval, { size = 8, max_len = 320 })
    gen.save = dir .. "/predictions_after.jsonl"
    local rouge_after = runner.eval.generation(model, data.eval, gen)
    model:save_adapter(dir .. "/adapter")
    return {
      train_examples = #data.train,
      eval_examples = #data.eval,
      eval_loss_before = before.loss, eval_loss = after.loss,
      rouge_l_before = rouge_before.rouge_l, rouge_l = rouge_after.rouge_l,
      exact_match_before = rouge_before.exact_match, exact_match = rouge_after.exact_match,
      trainable = model:trainable_params(),
    }
  end,
}
