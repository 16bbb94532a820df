"""Offline tools behind `edged detect | bench | eval`: image and video files in, results out."""
