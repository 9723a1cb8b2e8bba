# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
"""Launch the p3d_perception node, optionally with RViz and a bag to play.

    ros2 launch p3d_perception perception.launch.py \
        input_topic:=/camera/depth/color/points rviz:=true

Arguments are declared so `ros2 launch ... --show-args` documents them.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, GroupAction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node, PushRosNamespace


def generate_launch_description():
    share = get_package_share_directory('p3d_perception')
    params_file = LaunchConfiguration('params_file')
    use_sim_time = LaunchConfiguration('use_sim_time')
    input_topic = LaunchConfiguration('input_topic')
    namespace = LaunchConfiguration('namespace')
    rviz = LaunchConfiguration('rviz')
    bag = LaunchConfiguration('bag')

    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'perception.yaml'),
            description='Node parameters (YAML with a /**: ros__parameters: section)'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use /clock (true when playing a bag)'),
        DeclareLaunchArgument(
            'input_topic', default_value='/camera/depth/color/points',
            description='sensor_msgs/PointCloud2 topic to perceive'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace for the node and its topics/services'),
        DeclareLaunchArgument(
            'rviz', default_value='false', description='Also start RViz with config/p3d.rviz'),
        DeclareLaunchArgument(
            'bag', default_value='',
            description='Optional rosbag2 to play in a loop (for the demo); sets /clock'),
    ]

    node = Node(
        package='p3d_perception',
        executable='perception_node',
        name='p3d_perception',
        output='screen',
        emulate_tty=True,
        parameters=[params_file, {'use_sim_time': use_sim_time}],
        remappings=[('points', input_topic)],
    )

    rviz_node = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', os.path.join(share, 'config', 'p3d.rviz')],
        parameters=[{'use_sim_time': use_sim_time}],
        condition=IfCondition(rviz),
    )

    has_bag = PythonExpression(["'", bag, "' != ''"])
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', bag, '--loop', '--clock',
             '--remap', ['/camera/depth/color/points:=', input_topic]],
        output='screen',
        condition=IfCondition(has_bag),
    )

    return LaunchDescription(arguments + [
        GroupAction([
            PushRosNamespace(namespace),
            node,
        ]),
        rviz_node,
        play,
    ])
