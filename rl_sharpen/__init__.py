"""rl_sharpen: does RL teach new skills, or only sharpen what the base model already knows?"""
