/* The elementwise work of one LSTM step in one pass over the step's rows, for the
 * CPU backend's step loops (float32, contiguous, gate order i, f, g, o). Built at first use by
 * kernels.py; with OpenMP only where PyTorch runs on GNU OpenMP, whose runtime (and
 * threads) the library then shares; elsewhere a step runs on one thread.
 *
 * Exp is computed here rather than by libm so that the loops vectorize without fast-math:
 * Cody-Waite reduction by ln 2 and a degree-6 polynomial on [-ln2/2, ln2/2], with the
 * constants of Cephes' expf (S. Moshier), within about 1 ulp. Sigmoid and tanh built on it
 * are within 2e-7 of PyTorch's in absolute terms (tanh loses relative accuracy near 0). */
#include <stdint.h>
#include <string.h>

typedef float *restrict out_t;
typedef const float *restrict in_t;

/* Below this many hidden units in a step, one thread does the step. */
#define PARALLEL_MIN 16384

static inline float exp_f(float input)
{
    float x = input != input ? 0.0f : input; /* NaN: returned as it came, at the end */
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    const float t = x * 1.44269504088896341f + 0.5f;
    const int32_t k = (int32_t)t - (t < 0.0f); /* floor(t), but for negative integers */
    const float n = (float)k;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (int32_t)((uint32_t)(k + 127) << 23); /* 2^k, k in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return input != input ? input : p * scale;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

static inline float tanh_f(float x) { return 1.0f - 2.0f / (1.0f + exp_f(2.0f * x)); }

/* Gates a_t = (a + mean) + noise ∘ r (noise may be NULL), activated in place; then
 * c_t = f c_{t-1} + i g and h_t = o tanh(c_t). For the next step's products it also writes
 * u = h_t ∘ mask (when u is not NULL) and u ∘ s (when u_signed is not NULL). One row (one
 * sequence) of each operand; a helper of its own so that its pointers stay restrict. */
static void forward_row(int64_t hidden, out_t a, in_t m, in_t z, in_t r, in_t c_prev,
                        out_t c, out_t h, in_t mask, out_t u, in_t in_signs, out_t u_signed)
{
    const int64_t width = 4 * hidden;
    if (z != NULL) {
        for (int64_t j = 0; j < width; ++j)
            a[j] = (a[j] + m[j]) + z[j] * r[j];
    } else {
        for (int64_t j = 0; j < width; ++j)
            a[j] += m[j];
    }
    for (int64_t j = 0; j < 2 * hidden; ++j)
        a[j] = sigmoid_f(a[j]);
    for (int64_t j = 2 * hidden; j < 3 * hidden; ++j)
        a[j] = tanh_f(a[j]);
    for (int64_t j = 3 * hidden; j < width; ++j)
        a[j] = sigmoid_f(a[j]);
    for (int64_t j = 0; j < hidden; ++j) {
        const float cell = a[hidden + j] * c_prev[j] + a[j] * a[2 * hidden + j];
        c[j] = cell;
        h[j] = a[3 * hidden + j] * tanh_f(cell);
    }
    if (u != NULL)
        for (int64_t j = 0; j < hidden; ++j)
            u[j] = h[j] * mask[j];
    if (u_signed != NULL)
        for (int64_t j = 0; j < hidden; ++j)
            u_signed[j] = (u != NULL ? u[j] : h[j]) * in_signs[j];
}

/* forward_row for every row of a step's (batch, ·) operands. */
void lstm_forward_step(int64_t batch, int64_t hidden, float *gates, const float *mean,
                       const float *noise, const float *out_signs, const float *c_prev,
                       float *c, float *h, const float *mask, float *u,
                       const float *in_signs, float *u_signed)
{
    const int64_t width = 4 * hidden;
#pragma omp parallel for schedule(static) if (batch * hidden >= PARALLEL_MIN)
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t gate_row = b * width, row = b * hidden;
        forward_row(hidden, gates + gate_row, mean + gate_row,
                    noise ? noise + gate_row : NULL, noise ? out_signs + gate_row : NULL,
                    c_prev + row, c + row, h + row, u ? mask + row : NULL, u ? u + row : NULL,
                    u_signed ? in_signs + row : NULL, u_signed ? u_signed + row : NULL);
    }
}

/* One step back through time for one row: ∂h_t = ∂y_t + (carried + carried_noise ∘ s) ∘
 * mask, where carried (and carried_noise, may be NULL) are the products of the later step's
 * gate gradients with W̄ (and ΔŴ) and mask may be NULL; dc holds ∂c_t on entry and ∂c_{t-1}
 * on return. Writes ∂a_t to da and, when sg is not NULL, ∂a_t ∘ r. */
static void backward_row(int64_t hidden, in_t a, in_t c_prev, in_t c, in_t grad_out,
                         in_t carried, in_t carried_noise, in_t in_signs, in_t mask, out_t dc,
                         out_t da, in_t r, out_t sg)
{
    float *dh = da + 3 * hidden; /* ∂h_t, in the slot that ∂a_o overwrites last */
    for (int64_t j = 0; j < hidden; ++j)
        dh[j] = carried[j];
    if (carried_noise != NULL)
        for (int64_t j = 0; j < hidden; ++j)
            dh[j] += carried_noise[j] * in_signs[j];
    if (mask != NULL)
        for (int64_t j = 0; j < hidden; ++j)
            dh[j] *= mask[j];
    for (int64_t j = 0; j < hidden; ++j)
        dh[j] += grad_out[j];
    for (int64_t j = 0; j < hidden; ++j) {
        const float i = a[j], f = a[hidden + j], g = a[2 * hidden + j], o = a[3 * hidden + j];
        const float tanh_c = tanh_f(c[j]);
        const float dcell = dc[j] + dh[j] * (o * (1.0f - tanh_c * tanh_c));
        da[j] = dcell * (g * (1.0f - i) * i);
        da[hidden + j] = dcell * (c_prev[j] * (1.0f - f) * f);
        da[2 * hidden + j] = dcell * (i * (1.0f - g * g));
        da[3 * hidden + j] = dh[j] * (tanh_c * (1.0f - o) * o);
        dc[j] = dcell * f;
    }
    if (sg != NULL)
        for (int64_t j = 0; j < 4 * hidden; ++j)
            sg[j] = da[j] * r[j];
}

/* backward_row for every row of a step's (batch, ·) operands. */
void lstm_backward_step(int64_t batch, int64_t hidden, const float *gates,
                        const float *c_prev, const float *c, const float *grad_out,
                        const float *carried, const float *carried_noise,
                        const float *in_signs, const float *mask, float *dc, float *grad_gates,
                        const float *out_signs, float *signed_grads)
{
    const int64_t width = 4 * hidden;
#pragma omp parallel for schedule(static) if (batch * hidden >= PARALLEL_MIN)
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t gate_row = b * width, row = b * hidden;
        backward_row(hidden, gates + gate_row, c_prev + row, c + row, grad_out + row,
                     carried + row, carried_noise ? carried_noise + row : NULL,
                     in_signs ? in_signs + row : NULL, mask ? mask + row : NULL, dc + row,
                     grad_gates + gate_row, signed_grads ? out_signs + gate_row : NULL,
                     signed_grads ? signed_grads + gate_row : NULL);
    }
}
