# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""The perception node as a managed (lifecycle) node: ``managed_perception_node``.

For systems that bring nodes up in order (a lifecycle manager, or
``ros2 lifecycle set /p3d_perception configure|activate|deactivate|cleanup``):

- *configure* loads the model and builds the pipeline (a bad model or parameter is a
  failed transition with the reason logged, and the node stays unconfigured);
- *activate* subscribes to the camera and enables the publishers;
- *deactivate* unsubscribes (the model and the remembered objects stay, so the next
  activate is instant); queries are answered with ``success=false`` meanwhile;
- *cleanup* drops the model and the memory (publishers, the query service and the
  diagnostics timer live as long as the process: destroying them from a transition
  callback races rclpy's multi-threaded executor).

The launch file's ``managed:=true autostart:=true`` does configure and activate.
"""

from __future__ import annotations

from typing import Any

from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn

from p3d_perception.ros.node import PerceptionBase, StartupError, spin


class ManagedPerceptionNode(PerceptionBase, LifecycleNode):
    """The lifecycle flavour of the perception node (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('p3d_perception', **kwargs)
        self._declare()
        self._outputs_created = False
        self.get_logger().info('unconfigured: ros2 lifecycle set '
                               f'{self.get_fully_qualified_name()} configure')

    def destroy_node(self) -> None:
        """Also destroy the lifecycle state machine, which rclpy's LifecycleNode leaves alive.

        The state machine holds the node handle, so without this the node and its
        ``change_state`` service stay in the ROS graph until the process exits; a later
        node of the same name then shares its lifecycle services with that ghost, and a
        ``ros2 lifecycle set`` or launch autostart request sent to the ghost never returns.
        """
        super().destroy_node()
        self._state_machine.destroy_when_not_in_use()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as exc:
            self.get_logger().error(f'configure failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        if not self._outputs_created:
            self._create_outputs(self.create_lifecycle_publisher)
            self._outputs_created = True
        self.get_logger().info('configured: model loaded')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        source = self._subscribe(removable=True)
        self.get_logger().info(self._ready_line(source))
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._unsubscribe()
        self.get_logger().info('inactive: not subscribed; model and memory kept')
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info('unconfigured: model released')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._unsubscribe()
        if self.pipeline is not None:
            self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._unsubscribe()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        with self._lock:
            self.pipeline = None


def main(args: list[str] | None = None) -> int:
    return spin(lambda context: ManagedPerceptionNode(context=context), args)


if __name__ == '__main__':
    import sys
    sys.exit(main())
