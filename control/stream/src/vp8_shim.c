/*
 * Thin C layer between vp8.rs and libvpx. libvpx's configuration and image structs are large
 * and versioned (their layout changes with the ABI version); compiling this file against the
 * installed headers keeps Rust away from those layouts: Rust only passes integers, pointers to
 * planes it owns, and reads back a byte buffer this file owns.
 *
 * Every function returns a vpx_codec_err_t (0 = VPX_CODEC_OK).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vpx/vp8cx.h>
#include <vpx/vp8dx.h>
#include <vpx/vpx_decoder.h>
#include <vpx/vpx_encoder.h>

/* One realtime VP8 encoder plus the bytes of the last encoded frame. */
struct cp_vp8_enc {
  vpx_codec_ctx_t ctx;
  vpx_codec_enc_cfg_t cfg;
  vpx_codec_pts_t pts;
  uint8_t *out;
  size_t out_len;
  size_t out_cap;
  int out_key;
};

static vpx_codec_err_t control(struct cp_vp8_enc *e, int id, int value) {
  return vpx_codec_control_(&e->ctx, id, value);
}

void cp_vp8_enc_free(struct cp_vp8_enc *e) {
  if (!e) return;
  vpx_codec_destroy(&e->ctx);
  free(e->out);
  free(e);
}

int cp_vp8_enc_new(unsigned width, unsigned height, unsigned kbps, unsigned fps, int cpu_used,
                   struct cp_vp8_enc **out) {
  *out = NULL;
  struct cp_vp8_enc *e = calloc(1, sizeof(*e));
  if (!e) return VPX_CODEC_MEM_ERROR;
  vpx_codec_err_t err = vpx_codec_enc_config_default(vpx_codec_vp8_cx(), &e->cfg, 0);
  if (err) {
    free(e);
    return err;
  }
  e->cfg.g_w = width;
  e->cfg.g_h = height;
  e->cfg.g_timebase.num = 1;
  e->cfg.g_timebase.den = (int)fps;
  e->cfg.g_threads = 1;
  e->cfg.g_pass = VPX_RC_ONE_PASS;
  e->cfg.g_lag_in_frames = 0;
  e->cfg.g_error_resilient = VPX_ERROR_RESILIENT_DEFAULT;
  e->cfg.rc_end_usage = VPX_CBR;
  e->cfg.rc_target_bitrate = kbps;
  e->cfg.rc_dropframe_thresh = 0; /* a damaged frame is always sent */
  e->cfg.rc_resize_allowed = 0;
  e->cfg.rc_min_quantizer = 2;
  e->cfg.rc_max_quantizer = 56;
  e->cfg.rc_undershoot_pct = 100;
  e->cfg.rc_overshoot_pct = 15;
  e->cfg.rc_buf_initial_sz = 500;
  e->cfg.rc_buf_optimal_sz = 600;
  e->cfg.rc_buf_sz = 1000;
  e->cfg.kf_mode = VPX_KF_DISABLED; /* keyframes only on request (join, PLI) */
  err = vpx_codec_enc_init(&e->ctx, vpx_codec_vp8_cx(), &e->cfg, 0);
  if (err) {
    free(e);
    return err;
  }
  /* A keyframe may take at most half the optimal buffer (WebRTC's rule), so a requested
   * keyframe does not stall the stream. */
  unsigned max_intra_pct = e->cfg.rc_buf_optimal_sz / 2 * fps / 10;
  if ((err = control(e, VP8E_SET_CPUUSED, cpu_used)) ||
      (err = control(e, VP8E_SET_STATIC_THRESHOLD, 1)) ||
      (err = control(e, VP8E_SET_NOISE_SENSITIVITY, 0)) ||
      (err = control(e, VP8E_SET_TOKEN_PARTITIONS, VP8_ONE_TOKENPARTITION)) ||
      (err = control(e, VP8E_SET_SCREEN_CONTENT_MODE, 1)) ||
      (err = control(e, VP8E_SET_MAX_INTRA_BITRATE_PCT, (int)max_intra_pct))) {
    cp_vp8_enc_free(e);
    return err;
  }
  *out = e;
  return VPX_CODEC_OK;
}

/* Change the CBR target; libvpx applies it from the next frame without a keyframe. */
int cp_vp8_enc_set_bitrate(struct cp_vp8_enc *e, unsigned kbps) {
  e->cfg.rc_target_bitrate = kbps;
  return vpx_codec_enc_config_set(&e->ctx, &e->cfg);
}

const char *cp_vp8_enc_error_detail(struct cp_vp8_enc *e) {
  const char *detail = vpx_codec_error_detail(&e->ctx);
  return detail ? detail : "";
}

static vpx_codec_err_t append(struct cp_vp8_enc *e, const void *buf, size_t len) {
  if (e->out_len + len > e->out_cap) {
    size_t cap = (e->out_len + len) * 2;
    uint8_t *grown = realloc(e->out, cap);
    if (!grown) return VPX_CODEC_MEM_ERROR;
    e->out = grown;
    e->out_cap = cap;
  }
  memcpy(e->out + e->out_len, buf, len);
  e->out_len += len;
  return VPX_CODEC_OK;
}

/* Encode one I420 frame of the configured size. The planes are only read. On success the
 * frame's bytes are at *data (valid until the next call) and *key says whether it is a
 * keyframe. */
int cp_vp8_enc_encode(struct cp_vp8_enc *e, const uint8_t *y, const uint8_t *u, const uint8_t *v,
                      int y_stride, int uv_stride, int force_key, const uint8_t **data,
                      size_t *len, int *key) {
  vpx_image_t img;
  if (!vpx_img_wrap(&img, VPX_IMG_FMT_I420, e->cfg.g_w, e->cfg.g_h, 1, (unsigned char *)y))
    return VPX_CODEC_INVALID_PARAM;
  img.planes[VPX_PLANE_U] = (unsigned char *)u;
  img.planes[VPX_PLANE_V] = (unsigned char *)v;
  img.stride[VPX_PLANE_Y] = y_stride;
  img.stride[VPX_PLANE_U] = uv_stride;
  img.stride[VPX_PLANE_V] = uv_stride;
  e->out_len = 0;
  e->out_key = 0;
  vpx_codec_err_t err = vpx_codec_encode(&e->ctx, &img, e->pts++, 1,
                                         force_key ? VPX_EFLAG_FORCE_KF : 0, VPX_DL_REALTIME);
  if (err) return err;
  vpx_codec_iter_t iter = NULL;
  const vpx_codec_cx_pkt_t *pkt;
  while ((pkt = vpx_codec_get_cx_data(&e->ctx, &iter))) {
    if (pkt->kind != VPX_CODEC_CX_FRAME_PKT) continue;
    if ((err = append(e, pkt->data.frame.buf, pkt->data.frame.sz))) return err;
    if (pkt->data.frame.flags & VPX_FRAME_IS_KEY) e->out_key = 1;
  }
  *data = e->out;
  *len = e->out_len;
  *key = e->out_key;
  return VPX_CODEC_OK;
}

/* A VP8 decoder: the tests' oracle for what a browser would see. */
int cp_vp8_dec_new(vpx_codec_ctx_t **out) {
  *out = NULL;
  vpx_codec_ctx_t *d = calloc(1, sizeof(*d));
  if (!d) return VPX_CODEC_MEM_ERROR;
  vpx_codec_dec_cfg_t cfg = {.threads = 1, .w = 0, .h = 0};
  vpx_codec_err_t err = vpx_codec_dec_init(d, vpx_codec_vp8_dx(), &cfg, 0);
  if (err) {
    free(d);
    return err;
  }
  *out = d;
  return VPX_CODEC_OK;
}

void cp_vp8_dec_free(vpx_codec_ctx_t *d) {
  if (!d) return;
  vpx_codec_destroy(d);
  free(d);
}

/* Decode one frame into caller planes of exactly width x height (strides width, width/2).
 * VPX_CODEC_CORRUPT_FRAME if the stream gives no picture or one of another size. */
int cp_vp8_dec_decode(vpx_codec_ctx_t *d, const uint8_t *data, size_t len, unsigned width,
                      unsigned height, uint8_t *y, uint8_t *u, uint8_t *v) {
  if (len > UINT32_MAX) return VPX_CODEC_INVALID_PARAM;
  vpx_codec_err_t err = vpx_codec_decode(d, data, (unsigned)len, NULL, 0);
  if (err) return err;
  vpx_codec_iter_t iter = NULL;
  vpx_image_t *img = vpx_codec_get_frame(d, &iter);
  if (!img || img->fmt != VPX_IMG_FMT_I420 || img->d_w != width || img->d_h != height)
    return VPX_CODEC_CORRUPT_FRAME;
  uint8_t *dst[3] = {y, u, v};
  for (int p = 0; p < 3; p++) {
    unsigned w = p ? width / 2 : width, h = p ? height / 2 : height;
    for (unsigned r = 0; r < h; r++)
      memcpy(dst[p] + (size_t)r * w, img->planes[p] + (size_t)r * img->stride[p], w);
  }
  return VPX_CODEC_OK;
}
