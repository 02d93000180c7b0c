"""Pure lr searches, shared by the sweep (which runs them) and the report (which reads them back from run dirs):
largest_trainable (the largest lr at which every seed trains, with its bracket) and best_lr (each variant's lr of
highest accuracy over tuning seeds, on a grid extended until that lr is interior); lrs rounds and compares lrs."""
