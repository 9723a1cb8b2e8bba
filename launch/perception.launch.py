# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Launch the p3d_perception node, optionally with RViz and a bag to play.

    ros2 launch p3d_perception perception.launch.py \
        input_topic:=/camera/depth/color/points rviz:=true

Arguments are declared so `ros2 launch ... --show-args` documents them. With
``managed:=true`` the lifecycle node is started instead (``autostart:=true``
configures and activates it). ``bag:=`` plays a recording in a loop with /clock and
turns ``use_sim_time`` on; if the player fails, the launch stops instead of leaving
an idle node. RViz gets a config with this launch's topic names, and is skipped with
a warning where rviz2 is not installed.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, GroupAction,
                            LogInfo, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.events import matches_action, Shutdown
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode, Node, PushRosNamespace
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from p3d_perception.ros import launch_support


def _rviz_and_player(context, share):
    """Actions that need the arguments' values: the RViz config and the bag player."""
    namespace = LaunchConfiguration('namespace').perform(context)
    input_topic = LaunchConfiguration('input_topic').perform(context)
    use_sim_time = _sim_time(context)
    actions = []
    if LaunchConfiguration('rviz').perform(context).lower() in ('true', '1', 'yes'):
        if launch_support.have_rviz():
            config = launch_support.rviz_config(os.path.join(share, 'config', 'p3d.rviz'),
                                                namespace, input_topic)
            actions.append(GroupAction([PushRosNamespace(namespace), Node(
                package='rviz2', executable='rviz2', name='rviz2', arguments=['-d', str(config)],
                parameters=[{'use_sim_time': use_sim_time}])]))
        else:
            actions.append(LogInfo(msg='rviz:=true but rviz2 is not installed: starting '
                                       'without RViz (apt install ros-jazzy-rviz2)'))
    bag = LaunchConfiguration('bag').perform(context)
    if bag:
        play = ExecuteProcess(
            cmd=launch_support.player_command(bag, input_topic, namespace,
                                              LaunchConfiguration('bag_rate').perform(context)),
            output='screen', name='bag_player')
        stop = RegisterEventHandler(OnProcessExit(target_action=play, on_exit=[
            LogInfo(msg='the bag player exited: stopping the launch'),
            EmitEvent(event=Shutdown(reason='bag player exited'))]))
        actions += [play, stop]
    return actions


def _sim_time(context) -> bool:
    """use_sim_time, forced on when a bag is played (its /clock is the time base)."""
    value = LaunchConfiguration('use_sim_time').perform(context).lower() in ('true', '1', 'yes')
    return value or bool(LaunchConfiguration('bag').perform(context))


def _nodes(context):
    common = dict(
        package='p3d_perception', name='p3d_perception', output='screen', emulate_tty=True,
        parameters=[LaunchConfiguration('params_file'),
                    {'use_sim_time': _sim_time(context),
                     'input_qos': LaunchConfiguration('input_qos')}],
        remappings=[('points', LaunchConfiguration('input_topic'))],
        respawn=LaunchConfiguration('respawn'), respawn_delay=2.0,
        ros_arguments=['--log-level', LaunchConfiguration('log_level')])
    plain = Node(executable='perception_node', condition=UnlessCondition(
        LaunchConfiguration('managed')), **common)
    managed = LifecycleNode(executable='managed_perception_node', namespace='',
                            condition=IfCondition(LaunchConfiguration('managed')), **common)
    autostart = IfCondition(PythonExpression([
        "'", LaunchConfiguration('managed'), "'.lower() == 'true' and '",
        LaunchConfiguration('autostart'), "'.lower() == 'true'"]))
    configure = RegisterEventHandler(OnProcessStart(target_action=managed, on_start=[
        EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(managed),
                                    transition_id=Transition.TRANSITION_CONFIGURE))]),
        condition=autostart)
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=managed, goal_state='inactive', entities=[
            EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(managed),
                                        transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=autostart)
    return [GroupAction([PushRosNamespace(LaunchConfiguration('namespace')),
                         plain, managed, configure, activate])]


def generate_launch_description():
    share = get_package_share_directory('p3d_perception')
    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'perception.yaml'),
            description='Node parameters (YAML with a /**: ros__parameters: section)'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use /clock (forced on when bag:= is given)'),
        DeclareLaunchArgument(
            'input_topic', default_value='/camera/depth/color/points',
            description='sensor_msgs/PointCloud2 topic to perceive'),
        DeclareLaunchArgument(
            'input_qos', default_value='sensor_data', choices=['sensor_data', 'reliable'],
            description="Input subscription: 'sensor_data' (best effort, matches every "
                        "camera driver) or 'reliable' (only reliable publishers)"),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace for the node, its topics/services and RViz'),
        DeclareLaunchArgument(
            'managed', default_value='false',
            description='Start the lifecycle (managed) node instead of the plain one'),
        DeclareLaunchArgument(
            'autostart', default_value='true',
            description='With managed:=true, configure and activate it at once'),
        DeclareLaunchArgument(
            'respawn', default_value='true',
            description='Restart the node if its process ever exits (2 s delay)'),
        DeclareLaunchArgument(
            'log_level', default_value='info', description='Node log level'),
        DeclareLaunchArgument(
            'rviz', default_value='false', description='Also start RViz with config/p3d.rviz'),
        DeclareLaunchArgument(
            'bag', default_value='',
            description='Optional rosbag2 to play in a loop (for the demo); sets /clock'),
        DeclareLaunchArgument(
            'bag_rate', default_value='1.0', description='Playback speed of bag:='),
    ]
    # Shared memory large enough for 640x480 clouds (config/fastdds.xml) for every process
    # this launch starts, unless the user chose a profile; Fast DDS 2.x (Jazzy and older)
    # reads the FASTRTPS_ name, 3.x warns that it is deprecated.
    names = ['FASTDDS_DEFAULT_PROFILES_FILE']
    if os.environ.get('ROS_DISTRO', 'jazzy') in ('humble', 'iron', 'jazzy'):
        names.append('FASTRTPS_DEFAULT_PROFILES_FILE')
    transport = os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE',
                               os.path.join(share, 'config', 'fastdds.xml'))
    env = [SetEnvironmentVariable(name, os.environ.get(name, transport)) for name in names]
    return LaunchDescription(arguments + env + [
        OpaqueFunction(function=_nodes),
        OpaqueFunction(function=_rviz_and_player, args=[share]),
    ])
