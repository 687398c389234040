-- Peak memory of a training step by method, each in a process of its own (a process's peak
-- RSS is the measure, and trials sharing a process would inherit each other's allocations):
-- Ladder Side-Tuning and AttentionFusion, which build no graph through the frozen backbone,
-- beside LoRA and full fine-tuning on the same batches (16 rows of data/instruct.jsonl in the
-- Alpaca format, up to 256 tokens), 5 steps each.
--   scripts/bench_method_memory.sh      # each method in its own process (a shard each), merged
--   runner recipes/method_memory.lua --shard 3/5   # one of them
-- Results: results/method_memory/trials.csv (peak_mem_mb, seconds per step).

local specs = {
  full = function() return runner.peft.full{} end,
  lora = function() return runner.peft.lora{ rank = 8, alpha = 16 } end,
  lora_all = function() return runner.peft.lora{ rank = 8, alpha = 16, targets = "all-linear" } end,
  ladder = function() return runner.peft.ladder{ reduction_factor = 8 } end,
  attention_fusion = function() return runner.peft.attention_fusion{} end,
}
local steps = runner.params.steps or 5
local base = runner.model.load("smollm2-135m-instruct")
local data = runner.data.jsonl("data/instruct.jsonl"):template("alpaca")

runner.sweep{
  name = "method_memory",
  grid = { method = { "full", "lora_all", "lora", "ladder", "attention_fusion" } },
  trial = function(p)
    local spec = specs[p.method]
    base:attach(spec())
    local trainer = runner.trainer{ model = base, optim = runner.optim.adamw{ lr = 1e-4 } }
    local tokens = 0
    for step, batch in data:batches{ size = 16, max_len = 256, steps = steps, seed = p.seed } do
      local _, info = trainer:step(batch)
      tokens = tokens + info.tokens
      runner.log{ step = step, loss = info.loss }
    end
    return { trainable = base:trainable_params(), tokens_per_step = tokens / steps }
  end,
}
