from .atss import ATSSAssignment, atss_assign
from .hungarian import HungarianMatcher, PixelHungarianMatcher, focal_class_cost, linear_assignment
from .max_iou import MaxIoUAssignment, max_iou_assign

__all__ = ["ATSSAssignment", "HungarianMatcher", "MaxIoUAssignment", "PixelHungarianMatcher", "atss_assign",
           "focal_class_cost", "linear_assignment", "max_iou_assign"]
