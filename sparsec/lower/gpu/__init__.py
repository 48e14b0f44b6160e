"""The GPU (OpenCL) side of the lowering: kernel generators and schedules for every IR op, the
launch records TVM's lowering leaves behind, and the static GPU report read from the device code."""
