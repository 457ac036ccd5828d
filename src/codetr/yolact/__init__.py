"""YOLACT (Bolya et al. 2019) and YOLACT++ deformable backbone: real-time instance segmentation."""
