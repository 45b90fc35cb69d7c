"""Data-parallel training over ``torch.distributed`` (:mod:`sharpest.distributed.ddp`)."""
