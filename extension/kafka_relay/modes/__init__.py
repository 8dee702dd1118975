"""What differs per Lambda mode (managed instances, SnapStart) in the assembled extension."""
