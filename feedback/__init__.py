"""The labeling service: rating queue, annotators, reward blending, import and export, and the bridge that
lets rated generations drive PPO. It hands plain frozen objects (`feedback.types`) to the UI and to rlhf/.
"""
