"""Benchmarks that print ratios measured side by side in one run (DESIGN §9).

Run as ``python -m bench <name> [options]``; every bench prints a human-readable table and
then one final line of JSON. Results and the commands that produced them: bench/RESULTS.md.
"""

BENCHES = {
    "encoder": "bench.encoder",  # bare open_clip encode_image vs the prompted image tower
    "service": "bench.service",  # the real HTTP server vs the bare and prompted encoders
    "backlog": "bench.backlog",  # python -m backlog (local engine) vs bare encode_image; Ray vs local
    "decisions": "bench.decisions",  # the decision path per image (scope model, batched rule, answers) vs the tower
    "overhead": "bench.overhead",  # the server's CPU time per image beyond the model and the decode (CPU)
    "gpu": "bench.gpu",  # the GPU goals in one run: P1, P2, P3 through HTTP, CUDA-graph and nvjpeg ablations
}
