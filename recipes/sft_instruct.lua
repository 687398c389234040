-- Instruction tuning: SmolLM2-135M-Instruct learns the short-answer tasks of
-- data/instruct.jsonl (600 Alpaca-style rows, 12 task families) through LoRA.
-- Reports eval loss, token accuracy and exact match of greedy answers on 100 held-out rows,
-- before and after training.
--   runner recipes/sft_instruct.lua [--set steps=N] [--set rank=R]
-- Results: results/sft_instruct/ (trials.csv, steps.csv, predictions before/after).

local steps = runner.params.steps or 100
local limit = runner.params.limit or 100
local base = runner.model.load("smollm2-135m-instruct")
local data = runner.data.jsonl("data/instruct.jsonl")
  :template("alpaca")
  :split{ eval = 100, seed = 0 }

runner.sweep{
  name = "sft_instruct",
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
    local gen = { max_new_tokens = 16, limit = limit, stop = { "\n" } }
    local _, before = trainer:evaluate(data.eval, { size = 16, max_len = 256 })
    gen.save = dir .. "/predictions_before.jsonl"
    local em_before = runner.eval.generation(model, data.eval, gen)
    for step, batch in data.train:batches{ size = 8, max_len = 256, steps = steps, seed = p.seed, group_by_length = true } do
      local loss, info = trainer:step(batch)
      if step % 5 == 0 or step == 1 then
        runner.log{ step = step, loss = loss, lr = info.lr, grad_norm = info.grad_norm }
      end
    end
    local _, after = trainer:evaluate(data.eval, { size = 16, max_len = 256 })
    gen.save = dir .. "/predictions_after.jsonl"
    local em_after = runner.eval.generation(model, data.eval, gen)
    model:save_adapter(dir .. "/adapter")
    return {
      train_examples = #data.train,
      eval_examples = #data.eval,
      eval_loss_before = before.loss, eval_loss = after.loss,
      token_accuracy_before = before.accuracy, token_accuracy = after.accuracy,
      exact_match_before = em_before.exact_match, exact_match = em_after.exact_match,
      trainable = model:trainable_params(),
    }
  end,
}
