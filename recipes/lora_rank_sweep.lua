-- Which rank, which matrices? A rank × targets grid of LoRA on the tiny model, the shape of
-- the LoRA paper's Table 6 question. Every trial starts from the same base and data order.
--   runner recipes/lora_rank_sweep.lua [--set steps=N]
-- Results: results/lora_rank_sweep/trials.csv (one row per rank × targets).

local steps = runner.params.steps or 100
local data = runner.data.jsonl("data/quickstart.jsonl"):split{ eval = 0.1, seed = 0 }
local base = runner.model.tiny{ layers = 2, d_model = 64, heads = 4, kv_heads = 2, vocab = 256, seed = 0 }

local target_sets = {
  qv = { "q_proj", "v_proj" },
  attn = { "q_proj", "k_proj", "v_proj", "o_proj" },
  all = "all-linear",
}

runner.sweep{
  name = "lora_rank_sweep",
  grid = { rank = { 1, 2, 4, 8, 16 }, targets = { "qv", "attn", "all" } },
  trial = function(p)
    local model = base:clone()
    model:attach(runner.peft.lora{ rank = p.rank, alpha = 2 * p.rank, targets = target_sets[p.targets], seed = p.seed })
    local trainer = runner.trainer{
      model = model,
      optim = runner.optim.adamw{ lr = 1e-2 },
      schedule = "cosine", warmup = 10, total_steps = steps,
    }
    for step, batch in data.train:batches{ size = 16, max_len = 64, steps = steps, seed = p.seed } do
      local loss = trainer:step(batch)
      if step % 25 == 0 then runner.log{ step = step, loss = loss } end
    end
    local eval_loss, eval = trainer:evaluate(data.eval)
    return { eval_loss = eval_loss, perplexity = eval.perplexity, trainable = model:trainable_params() }
  end,
}
