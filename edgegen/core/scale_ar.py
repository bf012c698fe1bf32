"""The contract of next-scale (VAR) image models that `edgegen.decoding.next_scale` programs against."""
