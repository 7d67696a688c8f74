// libjpeg-turbo's TurboJPEG API: errors come back as return codes (the libjpeg API's error_exit would longjmp or exit).
#include <turbojpeg.h>
