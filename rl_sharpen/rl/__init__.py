"""The RL objective as pure functions over arrays: rewards -> advantages -> per-token loss.

  rewards.py     RewardInputs, RewardConfig, compute_rewards, regime_preset (the paper's four regimes)
  advantages.py  AdvantageConfig, compute_advantages (rloo, grpo, dr_grpo, reinforce_pp, ...), with
                 inverse-success calibration
  losses.py      LossInputs, LossConfig, policy_loss (reinforce, ppo_clip, alpha_dpg)
  kl.py          k1 / k2 / k3 estimators of KL(pi || p_ref)
  calibration.py CalibrationConfig, Memory: distribution-level calibration, sampling from
                 z_pi - mu z_memory with a memory network trained on past rollouts
"""

from rl_sharpen.rl.advantages import ADVANTAGE_ESTIMATORS, AdvantageConfig, compute_advantages, register_estimator
from rl_sharpen.rl.kl import KL_ESTIMATORS, sequence_kl, token_kl
from rl_sharpen.rl.losses import AGGREGATIONS, LOSSES, LossConfig, LossInputs, aggregate, policy_loss, register_loss
from rl_sharpen.rl.rewards import (PRESET_NAMES, REWARD_COMPONENTS, RewardConfig, RewardInputs, compute_rewards,
                                   regime_preset, register_component, token_statistics)
