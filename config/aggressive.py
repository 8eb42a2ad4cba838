# train.py --preset aggressive: the paper's main task table. train.py's constants are this setting already;
# the file names it, so that a run can say which setting it ran.
t_low = 0.2
t_high = 0.7
lr = 1e-5
