"""The gRPC servicers (sensor link, admin) and their authorization: a thin layer over controller.core."""
