"""prefit: does pre-fitting a SIREN on another image make it fit a target image faster?

Modules, one concern each:
    config    structured (typed) Hydra configs, registered in a ConfigStore
    data      ciFAIR-10 / CIFAR-layout loading, safe unpickling, triple drawing
    model     the SIREN and its initialisation (shared by both engines)
    optim     a batched Adam and ReduceLROnPlateau with one learning rate per member
    engine    the sequential reference engine and the batched engine
    schemes   random / same_class / other_class (and more) as plans of fits per member
    train     the Hydra app: one job = one (hls, hfs) cell
    analyze   trajectories -> curves, AUC, statistics, figures, summary
    bench     timing of both engines against the machine's matmul ceiling
"""

__version__ = "0.1.0"
