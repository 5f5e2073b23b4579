"""A minimal Flower app: cohort's linear task (least squares, local mini-batch SGD) under FedAvg."""
