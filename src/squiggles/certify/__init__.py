"""Certificates: guarantees that no input in a region changes the prediction, beside the attacks' evidence.

- `squiggles.certify.bounds`: interval bound propagation (IBP) and CROWN for feed-forward ReLU networks.
- `squiggles.certify.smoothing`: randomized smoothing (Cohen et al. 2019), PREDICT and CERTIFY.
"""
