"""Regenerates the OpenCV reference outputs used by the faceproof-imaging tests.

Run from this folder with opencv-python-headless installed (dev only; tests never run Python):
    python3 make_reference.py
Inputs are deterministic noise images (noise is the hardest case for rounding parity).
"""
import cv2
import numpy as np

rng = np.random.default_rng(20261128)
noise_97x61 = rng.integers(0, 256, size=(61, 97, 3), dtype=np.uint8)
noise_96x64 = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
cv2.imwrite("noise_97x61.png", noise_97x61)
cv2.imwrite("noise_96x64.png", noise_96x64)

def save(name, img):
    cv2.imwrite(name, img)

# INTER_AREA downscales: fractional ratios and integer fast paths.
for (w, h) in [(40, 25), (13, 7), (96, 60), (50, 61)]:
    save(f"area_97x61_to_{w}x{h}.png", cv2.resize(noise_97x61, (w, h), interpolation=cv2.INTER_AREA))
for (w, h) in [(48, 32), (32, 16), (24, 16), (12, 8)]:
    save(f"area_96x64_to_{w}x{h}.png", cv2.resize(noise_96x64, (w, h), interpolation=cv2.INTER_AREA))
# INTER_LINEAR upscales (what resize_area and resize_bilinear do when enlarging).
for (w, h) in [(150, 100), (97, 130)]:
    save(f"linear_97x61_to_{w}x{h}.png", cv2.resize(noise_97x61, (w, h), interpolation=cv2.INTER_LINEAR))
# INTER_LINEAR downscale too (resize_bilinear).
save("linear_97x61_to_40x25.png", cv2.resize(noise_97x61, (40, 25), interpolation=cv2.INTER_LINEAR))
# warpAffine bilinear, constant border 0: rotation + scale + translation that leaves the frame.
m = np.array([[0.8470022, 0.0619213, -20.5], [-0.0619213, 0.8470022, 7.25]], dtype=np.float64)
save("warp_97x61_to_64x64.png", cv2.warpAffine(noise_97x61, m, (64, 64), flags=cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_CONSTANT, borderValue=0))
m2 = np.array([[1.7, -0.4, 3.3], [0.35, 1.6, -12.0]], dtype=np.float64)
save("warp_97x61_to_112x112_up.png", cv2.warpAffine(noise_97x61, m2, (112, 112), flags=cv2.INTER_LINEAR,
                                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0))
# Seeds for the mutation test that the image crate cannot encode itself.
src = cv2.imread("../../../../tests/fixtures/obama_2012_official_portrait.jpg")
small = cv2.resize(src, (72, 90), interpolation=cv2.INTER_AREA)
cv2.imwrite("seed_progressive.jpg", small, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 80])
cv2.imwrite("seed_restart.jpg", small, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2, cv2.IMWRITE_JPEG_QUALITY, 80])
cv2.imwrite("seed_gray.jpg", cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
cv2.imwrite("seed_lossy.webp", small, [cv2.IMWRITE_WEBP_QUALITY, 70])
cv2.imwrite("seed_gray16.png", (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257))
