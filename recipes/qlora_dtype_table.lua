-- The shape of the QLoRA paper's Table 2 on SmolLM2-135M: perplexity of a fixed held-out text
-- (data/heldout_rivers.txt, written for this project) with the projection weights stored in
-- fp32, Int8, Int4, FP4, NF4 and NF4 + double quantization, all blockwise with block 64.
--   runner recipes/qlora_dtype_table.lua [--set model=PATH] [--set window=512]
-- Results: results/qlora_dtype_table/trials.csv (dtype, perplexity, nll, bytes per weight).
--
-- The "fp32" row is the model as runner loads it; SmolLM2's only local copy is a Q4_1 GGUF,
-- dequantized to f32, so every other row is a second quantization of already-rounded weights.

local base = runner.model.load(runner.params.model or "smollm2-135m-instruct")
local text = runner.data.text("data/heldout_rivers.txt")
local window = runner.params.window or 512

local dtypes = {
  fp32 = false,
  int8 = { dtype = "int8", double = false },
  int4 = { dtype = "int4", double = false },
  fp4 = { dtype = "fp4", double = false },
  nf4 = { dtype = "nf4", double = false },
  ["nf4+dq"] = { dtype = "nf4", double = true },
}

runner.sweep{
  name = "qlora_dtype_table",
  grid = { dtype = { "fp32", "int8", "int4", "fp4", "nf4", "nf4+dq" } },
  trial = function(p)
    local model = base:clone()
    local q = dtypes[p.dtype]
    local bytes_per_param = 4
    if q then
      bytes_per_param = model:quantize{ dtype = q.dtype, block = 64, double = q.double }.bytes_per_param
    end
    local _, r = model:perplexity(text, { window = window })
    return { perplexity = r.perplexity, nll = r.nll, tokens = r.tokens, bytes_per_param = bytes_per_param, block = q and 64 or "" }
  end,
}
