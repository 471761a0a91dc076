# A complete MoE layer (router -> dispatch -> expert FFN -> combine, forward and backward) as 8
# ranks on 2 emulated nodes, checked against a single-process reference; exits non-zero on a
# mismatch. Prints the per-step figures, then a JSON summary of one step.
if [ -x "$B/examples/moe_layer" ]; then
  emulated_8 "$B/examples/moe_layer" --tokens 256 --hidden 64 --ffn 128 --steps 3
  emulated_8 "$B/examples/moe_layer" --tokens 256 --hidden 64 --ffn 128 --steps 1 --json
fi
