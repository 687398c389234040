-- The loop most recipes share: evaluate, train for a number of steps logging the loss,
-- evaluate again.
--   local fit = require "lib.fit"
--   local metrics = fit(trainer, data, { steps = 100, size = 16, max_len = 64, seed = p.seed })
-- Returns { eval_loss_before = ..., eval_loss = ... } and the last evaluation's table
-- (perplexity and the rest). Options: steps (required), size, max_len, seed, log_every
-- (log every N-th step and the first; default 1), eval (batch options for evaluation;
-- default: the trainer's), before (false to skip the first evaluation).

return function(trainer, data, opts)
  assert(opts and opts.steps, "fit: opts.steps is required")
  local log_every = opts.log_every or 1
  local metrics = {}
  if opts.before ~= false then
    metrics.eval_loss_before = trainer:evaluate(data.eval, opts.eval)
  end
  local batches = { size = opts.size, max_len = opts.max_len, steps = opts.steps, seed = opts.seed }
  for step, batch in data.train:batches(batches) do
    local loss = trainer:step(batch)
    if step == 1 or step % log_every == 0 then runner.log{ step = step, loss = loss } end
  end
  local eval_loss, eval = trainer:evaluate(data.eval, opts.eval)
  metrics.eval_loss = eval_loss
  return metrics, eval
end
