"""The images a run trains on: the CIFAR-10 sources, the decoded-image cache, and batches with augmentation on the
training device."""
