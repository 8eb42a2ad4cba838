# train.py --preset wide-t: the paper's preservation experiment (section 4.3), the views at t_L = 0.1 and
# t_H = 0.9 and a learning rate of 1.4e-6; everything else as train.py's constants.
t_low = 0.1
t_high = 0.9
lr = 1.4e-6
