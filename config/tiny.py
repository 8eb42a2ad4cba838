# train.py --preset tiny: the CPU path. A 1.8M-parameter model trained from scratch on the offline
# tiny-regex task (no download), minutes on two cores. To ablate on CPU, edit the values here, or add a
# line for any other setting of train.py; train.py prints every setting this file changes at start.
task = "tiny-regex"
model = "tiny"
device = "cpu"
dtype = "float32"
max_len = 128
lr = 2e-3
# each sequence's context rate drawn from U(0, 1] (LLaDA's objective) instead of the fixed t_low: a model
# trained from scratch must learn to generate from a fully masked canvas
random_context_rate = True
batch_size = 16
grad_accum = 1
total_batch = 0
epochs = 30
activation_checkpointing = False
predictor_layers = 2
ema_decay = 0.99
log_every = 10
save_every = 0
seed = 0
out_dir = "out-tiny"
