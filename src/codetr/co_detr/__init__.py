"""Co-DETR (Zong et al., ICCV 2023): Co-Deformable-DETR and Co-DINO with their auxiliary heads."""
