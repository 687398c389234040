-- QLoRA at a scale this machine cannot hold in f32: a Llama-2-7B-shaped checkpoint (6.5 billion
-- parameters with the test tokenizer's 128-token vocabulary; 26 GB in f32, more than the
-- machine's 24 GB) is loaded projection by projection straight into NF4 with double
-- quantization, LoRA r=8 goes on q and v, and a few training steps run. The trial records
-- runner.mem's estimate beside the measured peak (peak_mem_mb).
--   python scripts/make_random_llama.py /tmp/llama-7b --shape llama-2-7b
--   runner recipes/qlora_scale.lua --set model=/tmp/llama-7b [--set steps=3] [--set seq=64]
-- The weights are random (the point is memory and loading, not quality). Results:
-- results/qlora_scale/trials.csv.

local path = runner.params.model
if not path then error("set the checkpoint: --set model=DIR (made by scripts/make_random_llama.py)") end
local steps = runner.params.steps or 3
local seq = runner.params.seq or 64
local batch = runner.params.batch or 1
local data = runner.data.jsonl("data/quickstart.jsonl")

runner.sweep{
  name = "qlora_scale",
  grid = { dtype = { "nf4" } },
  trial = function(p)
    local t0 = os.time()
    local model = runner.model.load(path, { quantize = { dtype = p.dtype, block = 64, double = true } })
    local load_s = os.time() - t0
    model:attach(runner.peft.lora{ rank = 8, alpha = 16, targets = { "q_proj", "v_proj" } })
    local estimate = runner.mem{ model = model, method = "lora", rank = 8, targets = { "q_proj", "v_proj" },
                                 batch = batch, seq = seq }
    local trainer = runner.trainer{ model = model, optim = runner.optim.adamw{ lr = 1e-4 } }
    local t1 = os.time()
    local loss
    for step, b in data:batches{ size = batch, max_len = seq, steps = steps, seed = 0 } do
      loss = trainer:step(b)
      runner.log{ step = step, loss = loss }
    end
    return {
      params = model:total_params(),
      trainable = model:trainable_params(),
      load_s = load_s,
      step_s = (os.time() - t1) / steps,
      estimate_mb = estimate.total_mb,
      estimate_weights_mb = estimate.weights_mb,
      loss = loss,
    }
  end,
}
