"""The mesh code pretraining, SFT and the RL learner share: the (pp, dp, tp) mesh inside an existing
process group (mesh), the tensor-parallel plan (tensor), FSDP2/DDP and the order of wrappers
(layout), autocast and the vocab-parallel loss (compute), gradient clipping (grads), whole weights
out of shards (state), and the config checks a layout must pass (checks). Pipeline splitting stays
with pretraining (stages/pretrain/parallelize.py)."""
