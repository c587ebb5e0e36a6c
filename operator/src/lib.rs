//! The Starling operator: the `Broker` custom resource and its controller.
