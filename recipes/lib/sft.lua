-- The SFT stage of the preference recipes: a LoRA adapter (rank 8, all linear layers)
-- instruction-tuned on data/instruct.jsonl, run as its own one-trial sweep so that later
-- runs reuse it.
--   local sft = require "lib.sft"
--   local adapter, exact_match = sft(base, { name = "dpo_sft", steps = 60, eval = items, gen = opts })
-- Returns the adapter's folder and, when `eval` (prompt/response rows) is given, the greedy
-- answers' exact match on them with generation options `gen`.

return function(base, opts)
  assert(opts and opts.name and opts.steps, "sft: opts.name and opts.steps are required")
  local steps = opts.steps
  local result = runner.sweep{
    name = opts.name,
    trial = function(p)
      local model = base:clone()
      model:attach(runner.peft.lora{ rank = 8, alpha = 16, targets = "all-linear" })
      local trainer = runner.trainer{
        model = model, optim = runner.optim.adamw{ lr = 1e-3 },
        schedule = "cosine", warmup = math.min(10, steps - 1), total_steps = steps,
        max_grad_norm = 1.0, seed = p.seed,
      }
      local data = runner.data.jsonl("data/instruct.jsonl"):template("alpaca")
      for step, batch in data:batches{ size = 8, max_len = 256, steps = steps, seed = p.seed } do
        local loss = trainer:step(batch)
        if step % 10 == 0 or step == 1 then runner.log{ step = step, loss = loss } end
      end
      local dir = runner.trial_dir() .. "/adapter"
      model:save_adapter(dir)
      local em = opts.eval and runner.eval.generation(model, opts.eval, opts.gen).exact_match
      return { adapter = dir, exact_match = em }
    end,
  }
  local row = result[1]
  if not row then
    -- A dry run returns only the trials an earlier run finished; a shard only its own.
    error(string.format("sft: the SFT stage (sweep '%s') returned no row: under --dry-run it "
      .. "has not run yet (run the recipe once without --dry-run); under --shard its trial "
      .. "is another shard's", opts.name), 2)
  end
  if row.status ~= "ok" then
    error(string.format("sft: the SFT stage (sweep '%s', trial %s) %s: %s",
      opts.name, row.trial_id, row.status, row.error or "no message"), 2)
  end
  return row.adapter, row.exact_match
end
