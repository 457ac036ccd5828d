from .hungarian import HungarianMatcher, focal_class_cost, linear_assignment

__all__ = ["HungarianMatcher", "focal_class_cost", "linear_assignment"]
